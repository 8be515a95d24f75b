"""The fuzz suite: hostile input on every inbound path of the agent and the controller."""
