"""What the user asked for, turned into a validated Olive workflow: settings, Jinja templates,
the Olive schema, and the int4 build options."""
