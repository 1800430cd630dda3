"""Each evaluation scored against the base it was timed beside, and the board that ranks them."""
