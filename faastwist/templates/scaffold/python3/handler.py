def handle(req):
    """Called once per request with the body as text; what it returns (and prints)
    is the answer."""
    return req
