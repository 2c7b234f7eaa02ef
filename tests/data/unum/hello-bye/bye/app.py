import json

def lambda_handler(event, context):
    return "Bye"
