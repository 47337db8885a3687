"""Encoders ("upstream", in s3prl's words): audio/text/video -> features with their labels."""
