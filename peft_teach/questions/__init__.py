"""Graded questions of the practice notebooks, one module per lesson (lesson_NN.py)."""
