"""medtextseg.losses"""
