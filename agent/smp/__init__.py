"""Sans-I/O SMP for the agent: frame codec, group 128, image management values, upload window.

Nothing here does I/O, reads a clock or keeps a hidden sequence counter: sequence numbers and
timestamps are arguments. The session layer (agent.link.session) drives these over a transport.
"""
