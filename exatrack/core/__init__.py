"""What every stage leans on: basics and errors, the terminal, processes, the run store, environments, stats."""
