"""Converting other people's checkpoints into this package's model folders (`pathflip convert`)."""
