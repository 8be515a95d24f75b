"""Runtime shared by the agent and the controller: MQTT session, metrics server, config, logging."""
