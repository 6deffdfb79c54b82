"""Exceptions shared by the compiled compression kernels and their NumPy twin."""


class NonFiniteError(ValueError):
    """A gradient holds NaN or Inf; nothing was changed.

    ``count`` is the number of non-finite values and ``first_index`` the flat
    index of the first one.
    """

    def __init__(self, count: int, first_index: int, what: str = "gradient") -> None:
        super().__init__(
            f"{what} has {count} non-finite value{'s' if count != 1 else ''} "
            f"(NaN or Inf), the first at flat index {first_index}; nothing was "
            "compressed and the residual is unchanged"
        )
        self.count = count
        self.first_index = first_index
