"""The API's routes, one router per resource; each translates HTTP to session-service calls."""
