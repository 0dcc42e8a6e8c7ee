"""Bridges to other libraries' formats: diffusers (`kinema export diffusers`)."""
