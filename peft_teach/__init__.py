"""peft_teach: the small helper package of the course "PEFT from Scratch"."""

__version__ = "0.1.0"
