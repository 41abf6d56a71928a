"""Request path between the server and the runtime: validation, routing, execution."""
