"""net layer; see ARCHITECTURE notes in README."""
