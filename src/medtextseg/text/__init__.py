"""medtextseg.text"""
