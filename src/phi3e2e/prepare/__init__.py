"""The start of the flow: a base model in model-cache/ (Hub, local folder or tiny) and a
dataset imported into datasets/."""
