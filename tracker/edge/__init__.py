"""What an edge process runs: the HTTP server, its routes and the event writer."""
