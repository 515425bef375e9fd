"""engine layer; see ARCHITECTURE notes in README."""
