"""mirrorq's settings: one typed object, read from the environment (and `.env`) once."""

from config.settings import EmulatorSettings, Settings, get_emulator_settings, get_settings

__all__ = ["EmulatorSettings", "Settings", "get_emulator_settings", "get_settings"]
