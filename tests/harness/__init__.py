"""Real local components for tests: free ports, a throwaway mosquitto, a throwaway PostgreSQL database."""
