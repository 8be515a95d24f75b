"""The chaos suite: rollouts that finish correctly while the components under them are broken."""
