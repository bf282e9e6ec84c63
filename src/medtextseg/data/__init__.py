"""medtextseg.data"""
