"""The central controller: fleet registry, Memfault correlation and staged rollouts."""
