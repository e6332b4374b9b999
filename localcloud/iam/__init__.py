"""IAM Admin (service accounts, custom roles) and Resource Manager (projects) APIs."""
