"""Many compression paths at once: lanes of steps, in turn or over Ray, then evaluated side by side."""
