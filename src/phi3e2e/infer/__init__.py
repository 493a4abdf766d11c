"""Talking to a model: the engines for each model form and the chat session over them."""
