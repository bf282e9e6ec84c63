"""medtextseg.training"""
