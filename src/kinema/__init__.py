"""kinema: the Sora recipe for text-to-video, end to end."""

__version__ = "0.1.0"
