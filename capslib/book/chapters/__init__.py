"""One module per chapter (notebooks/<name>.ipynb): the analyses and figures that chapter's cells call.

May import the rest of capslib.book and the packages below it, and an earlier chapter (kernels uses chip).
"""
