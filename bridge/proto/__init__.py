"""proto layer; see ARCHITECTURE notes in README."""
