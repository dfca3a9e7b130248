"""Where a streamed response's tokens come from: the built-in engine (the simulator's serving core in
real time) or an OpenAI-compatible upstream server, re-paced."""
