"""`pixstream worker`: the Faust agents that turn job requests into outputs and events."""
