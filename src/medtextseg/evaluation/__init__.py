"""medtextseg.evaluation"""
