"""A small shop on eventbus: orders, payments and shipping as three services.

Run it with ``just demo`` (or ``python -m examples.shop``).
"""
