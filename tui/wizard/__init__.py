"""The Textual wizard: the app, its screens and the logic behind them."""
