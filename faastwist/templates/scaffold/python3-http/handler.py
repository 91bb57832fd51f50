def handle(event, context):
    """Called once per request: event.body (bytes), event.headers, event.method,
    event.query, event.path; return statusCode, body (a dict body is sent as JSON)
    and headers."""
    return {
        "statusCode": 200,
        "body": "Hello from faastwist!"
    }
