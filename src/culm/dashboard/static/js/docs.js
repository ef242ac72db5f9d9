// Swagger UI from the package's copy. "Try it out" from a signed-in browser sends the
// dashboard's CSRF header, as the dashboard does (the cookie alone is refused on writes).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  requestInterceptor: (request) => {
    request.headers["X-Culm-CSRF"] = "1";
    return request;
  },
});
