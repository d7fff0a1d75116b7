"""Parts of the SFT pipeline; the numbered scripts in scripts/ wire them together."""
