"""SAIL Scope core engine: torch + diffusers only (no gradio, no host imports)."""
