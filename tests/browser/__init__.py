"""The web app in headless Chromium (Playwright) against real `mediflow serve` processes."""
