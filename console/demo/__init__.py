"""`watchkeeper demo`: three local agents with a fleet file, and replayed flights traffic."""
