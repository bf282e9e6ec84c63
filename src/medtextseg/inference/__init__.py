"""medtextseg.inference"""
