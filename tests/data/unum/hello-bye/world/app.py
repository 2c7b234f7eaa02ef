
def lambda_handler(event, context):
	return f'{event} world!'
