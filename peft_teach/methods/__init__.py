"""From-scratch reference implementations of the PEFT methods taught in the course."""
