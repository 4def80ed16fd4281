"""The papers' losses, one module per paper (`li2018`, ...), each equation by equation."""
