"""swarm layer; see ARCHITECTURE notes in README."""
