"""mailsift: spam and data-leak filter for mail gateways."""

__version__ = "0.1.0"
