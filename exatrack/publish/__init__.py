"""What leaves the lab: the champion registered, its package read by the grader's stack, the zip."""
