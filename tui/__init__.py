"""The Textual application; reads through query/, never through raw files."""
