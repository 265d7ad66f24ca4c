"""Wire codecs: bytes to frozen values and back.  dpkt is used only inside this package."""
