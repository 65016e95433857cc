"""torch.library custom ops (``pyaeplus::<name>``): schema, fake, autograd and dispatch,
one file per op. Importing this package registers them."""
