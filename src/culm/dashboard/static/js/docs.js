// Swagger UI from the package's copy. "Try it out" from a signed-in browser sends the
// dashboard's CSRF header, as the dashboard does (the cookie alone is refused on writes).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // no badge fetched from a public validator: nothing leaves this server
  requestInterceptor: (request) => {
    request.headers["X-Culm-CSRF"] = "1";
    return request;
  },
});
